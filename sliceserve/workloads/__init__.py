"""Workloads (request classes as data), arrival processes and trace replay.

Shared by the simulator, the engine and a live benchmark client: not under `sim/`.
"""

from __future__ import annotations

from pathlib import Path

from sliceserve.latency_model import LatencyModel
from sliceserve.workloads.generate import (
    ARRIVALS,
    DEFAULT_CV,
    RequestSpec,
    Traffic,
    gamma_arrivals,
    generate_traffic,
    poisson_arrivals,
)
from sliceserve.workloads.spec import (
    ClassSpec,
    SloExpr,
    Workload,
    list_presets,
    load_workload,
    parse_workload,
    workload_from_dict,
)
from sliceserve.workloads.trace import estimate_prompt_tokens, load_trace, parse_trace

__all__ = [
    "ARRIVALS", "DEFAULT_CV", "ClassSpec", "RequestSpec", "SloExpr", "Traffic", "Workload",
    "estimate_prompt_tokens", "gamma_arrivals", "generate_traffic", "is_trace_path",
    "list_presets", "load_trace", "load_workload", "make_traffic", "parse_trace",
    "parse_workload", "poisson_arrivals", "workload_from_dict",
]


def is_trace_path(workload: str | Path) -> bool:
    return str(workload).endswith(".jsonl")


def make_traffic(workload: str | Workload, *, arrival: str = "poisson", rate_rps: float = 1.0,
                 num_requests: int = 100, seed: int = 0,
                 latency_model: LatencyModel | None = None, cv: float = DEFAULT_CV,
                 class_defaults: str | Workload | None = None) -> Traffic:
    """Traffic from a workload (a preset name, a JSON file, a `Workload`) or a `.jsonl` trace.

    A trace replays its own arrival times: `arrival`, `rate_rps` and `num_requests` are then
    ignored, and `class_defaults` (a workload) supplies SLO defaults for its classes.
    """
    if isinstance(workload, (str, Path)) and is_trace_path(workload):
        defaults = (load_workload(class_defaults) if isinstance(class_defaults, (str, Path))
                    else class_defaults)
        return load_trace(workload, workload=defaults, latency_model=latency_model, seed=seed)
    spec = load_workload(workload) if isinstance(workload, (str, Path)) else workload
    return generate_traffic(spec, arrival=arrival, rate_rps=rate_rps, num_requests=num_requests,
                            seed=seed, latency_model=latency_model, cv=cv)
