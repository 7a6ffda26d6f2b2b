"""What the commands that load a real model (`profile`, `run`, `serve`) share: their model
options and the checks of them, the runner alone, and the line on what it computes in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sliceserve.cli.common import BadInput, _check_positive
from sliceserve.engine.config import DTYPES, QUANTIZATIONS, EngineConfig

# The engine's choices (sliceserve/engine/config.py), checked here under the flags' names.
MODEL_DTYPES = DTYPES

# Options of the commands that load a real model.
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="smollm2-135m (default), a Hugging Face folder or a .gguf file")]
DtypeOpt = Annotated[str, typer.Option(
    help="auto (the format measured fastest on this device: bfloat16 where the CPU computes "
    "it natively, float32 on other CPUs), bfloat16, float16 or float32")]
QuantOpt = Annotated[str, typer.Option(
    "--quantization", help="none, or int8: weight-only int8 linear layers (CPU)")]
DeviceOpt = Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", help="torch CPU threads (default: torch's choice)")]
KvCacheOpt = Annotated[float | None, typer.Option(
    "--kv-cache-gb", help="KV cache memory budget, GB (default: the runner's)")]


def check_model_options(dtype: str, threads: int | None, kv_cache_gb: float | None,
                         quantization: str = "none") -> None:
    if dtype not in MODEL_DTYPES:
        raise BadInput(f"--dtype must be one of {', '.join(MODEL_DTYPES)}, got {dtype!r}")
    if quantization not in QUANTIZATIONS:
        raise BadInput(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got "
                       f"{quantization!r}")
    if threads is not None and threads < 1:
        raise BadInput(f"--threads must be >= 1, got {threads}")
    _check_positive("--kv-cache-gb", kv_cache_gb)


def load_runner(config: EngineConfig) -> tuple[Any, str]:
    """The executor `config` names, without a tokenizer, policy or engine (`profile`), and the
    model's name (default: the embedded SmolLM2)."""
    from sliceserve.engine.backends import resolve_backend
    from sliceserve.engine.build import make_runner
    from sliceserve.model.loader import DEFAULT_MODEL, resolve_model

    if resolve_backend(config.backend, config.model) == "llamacpp":
        from sliceserve.llamacpp.loading import load_gguf

        gguf = load_gguf(config.model, config.llamacpp_config(), **config.scheduler_limits())
        return gguf.executor, gguf.model_id  # the id build_engine's profile is keyed by
    runner = make_runner(config, Path(resolve_model(config.model)))
    return runner, DEFAULT_MODEL if config.model is None else config.model


def machine_line(runner: Any) -> str:
    """One line on what the runner computes in and on, and why (stderr of profile and run)."""
    from sliceserve.model.precision import machine_block

    m = machine_block(runner)
    cpu = (f"; CPU {m['cpu']} ({m['arch']}: {' '.join(m['cpu_flags']) or 'no listed flags'})"
           if "cpu" in m else "")
    quant = "" if m.get("quantization", "none") == "none" else f", {m['quantization']} weights"
    why = f" ({m['dtype_requested']}: {m['dtype_reason']})" if "dtype" in m else ""
    return (f"number format: {m.get('dtype', '?')}{quant}{why}; device {m['device']}{cpu}; "
            f"kernels {m['kernels']}; {m['threads']} threads")
