"""`sliceserve serve`: the OpenAI-compatible HTTP server (sliceserve/server, docs/API.md).

Flags are named as `vllm serve` names them where the meaning is the same.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from sliceserve.cli.backend_options import (
    BackendOpt,
    BatchOpt,
    CtxSizeOpt,
    GpuLayersOpt,
    SeqsOpt,
    llamacpp_options,
)
from sliceserve.cli.common import OPTION_HELP, BadInput, parse_policy_options
from sliceserve.cli.model_common import (
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    QuantOpt,
    ThreadsOpt,
    check_model_options,
)


def serve(
    model: ModelOpt = None,
    policy: Annotated[str, typer.Option("--policy", "-p", help="a registered policy")] = "slice",
    policy_option: Annotated[list[str] | None, typer.Option(
        "--policy-option", help=OPTION_HELP)] = None,
    host: Annotated[str, typer.Option(help="address to bind (default: loopback only)")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option(help="port (0: a free one, printed at start)")] = 8000,
    api_key: Annotated[list[str] | None, typer.Option(
        "--api-key", help="require `Authorization: Bearer KEY` on /v1/* (repeatable)")] = None,
    slo_classes: Annotated[str, typer.Option(
        help="a workload preset or file whose classes give requests their SLO defaults, "
        "resolved against this device's latency model")] = "edge",
    served_model_name: Annotated[list[str] | None, typer.Option(
        "--served-model-name", help="the model name(s) clients use (default: --model)")] = None,
    max_num_seqs: Annotated[int, typer.Option(help="requests in one iteration")] = 256,
    max_queued_requests: Annotated[int, typer.Option(
        help="waiting requests beyond which new ones get 429 queue_full (-1: no bound)")] = 256,
    infeasible: Annotated[str, typer.Option(
        help="a request the policy predicts cannot meet its SLO: 'reject' (429 slo_infeasible)"
        " or 'best-effort' (served anyway)")] = "reject",
    dtype: DtypeOpt = "auto",
    quantization: QuantOpt = "none",
    device: DeviceOpt = "cpu",
    kv_cache_memory_gb: Annotated[float | None, typer.Option(
        "--kv-cache-memory-gb", help="KV cache memory budget, GB")] = None,
    max_model_len: Annotated[int | None, typer.Option(
        help="context length (prompt + output), default the model's")] = None,
    threads: ThreadsOpt = None,
    latency_model: Annotated[str | None, typer.Option(
        "--latency-model", "-l", help="a latency model JSON file or preset (default: this "
        "device's cached profile, or a quick calibration at start)")] = None,
    drain_timeout: Annotated[float, typer.Option(
        help="on SIGTERM / SIGINT: seconds in-flight requests may still take")] = 30.0,
    max_request_bytes: Annotated[int, typer.Option(
        help="larger request bodies get 413")] = 2 * 1024 * 1024,
    retry_after: Annotated[int, typer.Option(help="Retry-After (s) of a 429")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn's log level")] = "warning",
    malloc_arena_max: Annotated[int, typer.Option(
        help="glibc malloc arenas at most (0: glibc's default)")] = 0,
    onednn_cache_capacity: Annotated[int, typer.Option(
        help="oneDNN primitive cache entries (the CPU linears' compiled kernels, one per "
        "shape; -1: oneDNN's default, 1024, which grows resident memory over a run; 64 kept a "
        "soak under 5% but may cost speed on varied shapes: docs/BENCHMARKS.md)")] = -1,
    malloc_trim_interval: Annotated[float, typer.Option(
        help="seconds between returns of free heap memory to the OS (0: never)")] = 60.0,
    backend: BackendOpt = "torch",
    ctx_size: CtxSizeOpt = None,
    kv_seqs: SeqsOpt = None,
    n_gpu_layers: GpuLayersOpt = 0,
    batch_size: BatchOpt = None,
) -> int:
    """Serve the model over an OpenAI-compatible HTTP API with per-request SLOs."""
    if onednn_cache_capacity < -1:
        raise BadInput(f"--onednn-cache-capacity must be >= -1, got {onednn_cache_capacity}")
    if onednn_cache_capacity >= 0:  # read when torch loads oneDNN; the environment wins
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(onednn_cache_capacity))
    from sliceserve.engine.config import EngineConfig
    from sliceserve.server.config import ServerConfig
    from sliceserve.server.runtime import serve as run_server

    check_model_options(dtype, threads, None, quantization)
    if kv_cache_memory_gb is not None and not kv_cache_memory_gb > 0:
        raise BadInput(f"--kv-cache-memory-gb must be > 0, got {kv_cache_memory_gb}")
    if max_queued_requests < -1:
        raise BadInput(f"--max-queued-requests must be >= -1, got {max_queued_requests}")
    options = parse_policy_options(policy_option or [], [policy])[policy]
    if max_num_seqs < 1:
        raise BadInput(f"--max-num-seqs must be >= 1, got {max_num_seqs}")
    engine = EngineConfig(
        model=model, policy=policy, policy_options=options, dtype=dtype,
        quantization=quantization, device=device, kv_cache_memory_gb=kv_cache_memory_gb,
        max_model_len=max_model_len, num_threads=threads, max_num_seqs=max_num_seqs,
        latency_model=latency_model, backend=backend,
        llamacpp=llamacpp_options(ctx_size, kv_seqs, n_gpu_layers, batch_size))
    config = ServerConfig(
        engine=engine, host=host, port=port,
        api_keys=tuple(api_key or ()), slo_classes=slo_classes,
        served_model_names=tuple(served_model_name or ()),
        max_queued_requests=None if max_queued_requests == -1 else max_queued_requests,
        infeasible=infeasible,  # type: ignore[arg-type]
        drain_timeout_s=drain_timeout, max_body_bytes=max_request_bytes,
        retry_after_s=retry_after, log_level=log_level,
        malloc_arena_max=malloc_arena_max or None, malloc_trim_interval_s=malloc_trim_interval)
    return run_server(config)
