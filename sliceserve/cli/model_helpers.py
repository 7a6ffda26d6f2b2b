"""Helpers of the model commands (`profile`, `run`): the load option, the profile
measurement, the trace file."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from sliceserve.cli.common import BadInput, _check_positive
from sliceserve.latency_model import LatencyModel
from sliceserve.workloads import is_trace_path


def check_load(load: float | None, rate: float | None, workload: str) -> None:
    _check_positive("--load", load)
    if load is not None and rate is not None:
        raise BadInput("give --rate or --load, not both")
    if load is not None and is_trace_path(workload):
        raise BadInput("--load needs a generated workload, not a trace")


def apply_load(load: float | None, workload: str, latency_model: LatencyModel,
                traffic_args: dict[str, Any]) -> dict[str, Any]:
    """With --load: set the traffic's rate from the device's capacity estimate; the facts
    for the result file (`load`, `capacity_estimate`)."""
    if load is None:
        return {}
    from sliceserve.workloads import load_workload
    from sliceserve.workloads.load import rate_for_load

    rate, estimate = rate_for_load(load, load_workload(workload), latency_model)
    traffic_args["rate_rps"] = rate
    print(f"--load {load:g}: {rate:.3g} requests/s ({load:g} x the estimated capacity "
          f"{estimate.rate_rps:.3g}/s)", file=sys.stderr)
    return {"load": load, "capacity_estimate": estimate.to_dict()}


def measure(runner: Any, name: str, settings: dict[str, Any], notes: str) -> tuple[Any, Any]:
    """Profile `runner` (a progress bar on stderr) and fit: (Profile, LatencyModel)."""
    from tqdm import tqdm

    from sliceserve.model import profile_cache, profiler

    key = profile_cache.profile_key(runner, name)
    with tqdm(desc="profile", unit="it", disable=None, file=sys.stderr) as bar:
        def progress(done: int, total: int, what: str) -> None:
            bar.total = total
            bar.set_postfix_str(what)
            bar.update(done - bar.n)

        measured = profiler.profile_runner(runner, model=name, progress=progress, **settings)
    fitted = profiler.fit_latency_model(measured, profile_cache.model_name(name, key), key.device,
                                        name, notes=notes)
    return measured, fitted


def write_trace(traffic: Any, path: Path) -> None:
    from sliceserve.bench.live import write_trace as write_live_trace

    try:
        write_live_trace(traffic, path)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror}") from None
    print(f"wrote {path}", file=sys.stderr)
